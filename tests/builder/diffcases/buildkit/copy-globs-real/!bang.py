!bang.py
