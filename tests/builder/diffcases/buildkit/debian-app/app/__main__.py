import http.server
import os

from app import VERSION


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"app {VERSION} ({os.environ.get('APP_ENV', 'dev')})\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    http.server.HTTPServer(("", 8000), Handler).serve_forever()
