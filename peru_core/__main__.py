import sys

from peru_core.cli import main

sys.exit(main())
