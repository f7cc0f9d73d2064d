"""moto's S3 server, answering one request at a time.

moto_server serves requests on many threads, and then two conditional
PutObjects (If-Match / If-None-Match) can both pass their check before either
stores: a lost update that AWS S3 never allows. Serving one request at a time
makes moto's conditional writes atomic, as S3's are, so the shared-mode tests
test duratom and not moto. Usage: moto_server_serial.py HOST PORT
"""
import os
import sys

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))
run_simple(host, port, DomainDispatcherApplication(create_backend_app),
           threaded=False, request_handler=MotoRequestHandler)
