"""`python3 -m cleanroom.worker`: phase B inside its sandbox. See cleanroom/worker/phase_b.py."""

import sys

from cleanroom.worker.phase_b import main

sys.exit(main())
