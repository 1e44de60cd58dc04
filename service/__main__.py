import sys

from offload.service.cli import main

sys.exit(main())
