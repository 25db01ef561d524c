"""Data sets, one file per modality (`images.py`, ...), and `download.py` for the data root and `genforge data fetch`.

Nothing is imported here on purpose: `import genforge.data` must stay cheap and free of side effects; the registry
imports the builders it needs by their "module:attr" names.
"""
