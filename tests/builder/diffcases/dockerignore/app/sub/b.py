app/sub/b.py
