import sys

from tirl.cli import main

sys.exit(main())
