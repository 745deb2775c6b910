"""What every layer uses and that uses none of them: ranks and gathers (`distributed.py`), the training and
evaluation dtype (`precision.py`), non-finite numbers (`nonfinite.py`: scored as the worst, never trained on),
the error a run stops with (`errors.py`), and process-level settings made through the C library: processes that
die with their parent, a heap that returns freed tensors (`process.py`)."""
