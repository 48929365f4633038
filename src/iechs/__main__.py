import sys

from iechs.cli import main

sys.exit(main())
