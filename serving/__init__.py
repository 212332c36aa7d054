"""HTTP serving of exported classifiers."""
