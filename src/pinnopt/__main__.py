import sys

from pinnopt.cli import main

sys.exit(main())
