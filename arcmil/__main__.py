import sys

from arcmil.cli import main

sys.exit(main())
