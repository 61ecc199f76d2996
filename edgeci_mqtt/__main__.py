"""``python -m edgeci_mqtt`` is the ``edgeci`` command."""

import sys

from edgeci_mqtt.cli import main

sys.exit(main())
