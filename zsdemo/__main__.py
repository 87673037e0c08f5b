import sys

from zsdemo.cli import main

sys.exit(main())
