import sys

from flowsense.cli import main

sys.exit(main())
