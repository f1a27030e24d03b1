setup.py
