"""structvl: video-language pre-training that learns structure (CLOP, S-ViLM, Clover).

Reading order for newcomers: config -> data -> models -> objectives -> engine -> tasks.
"""

__version__ = "0.1.0"
