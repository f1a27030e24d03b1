_private.py
