import sys

from fedflow.node.agent import main

sys.exit(main())
