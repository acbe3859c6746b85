"""Training code of this project; the entry points are train.py and the README."""
