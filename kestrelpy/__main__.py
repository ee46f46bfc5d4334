import sys

from kestrelpy.cli import main

sys.exit(main())
