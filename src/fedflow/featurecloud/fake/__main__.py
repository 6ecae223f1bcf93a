"""``python -m fedflow.featurecloud.fake --help``."""

import sys

from fedflow.featurecloud.fake.cli import main

sys.exit(main())
