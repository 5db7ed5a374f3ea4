import sys

from npc_server.cli import main

sys.exit(main())
