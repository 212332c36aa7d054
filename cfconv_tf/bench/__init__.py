"""``cfconv bench``: training and inference costs measured side by side in one run."""
