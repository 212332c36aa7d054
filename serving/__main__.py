"""``python -m serving``: the server alone, without TensorFlow (see :mod:`serving.cli`)."""

import sys

from serving.cli import main

sys.exit(main())
