import sys

from kdns.bench.cli import main

sys.exit(main())
