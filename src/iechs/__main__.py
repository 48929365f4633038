from iechs.cli import main
import sys

sys.exit(main())
