app/a.py
