main.py
