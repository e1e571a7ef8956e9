"""Imported by clean's forkserver (as a preload) so that every worker it forks ignores Ctrl-C
from its first instruction.

Ctrl-C reaches the whole process group. The main process stops the pool and prints one line;
a worker must stay quiet. Ignoring SIGINT in the pool initializer leaves a window (the fork,
unpickling the worker, the initializer's own first lines) in which a worker still raises
KeyboardInterrupt and prints a traceback. The forkserver records the handlers it starts with
after importing its preloads and gives them to each child it forks, so ignoring SIGINT here,
at import, closes that window.
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
