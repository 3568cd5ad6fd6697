"""Never returns from import."""

import hostcfg

hostcfg.mark()
print("LOOP_STARTED", flush=True)
while True:
    pass
