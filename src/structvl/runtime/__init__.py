"""What every layer uses and that uses none of them: ranks and gathers (`distributed.py`) and the training and
evaluation dtype (`precision.py`)."""
