def create():
    return None
