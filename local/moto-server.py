"""moto_server with DynamoDB transactions made isolated, idempotent and cheap.

moto (5.x) implements TransactWriteItems by deep-copying every table the transaction touches
and, if any condition fails, putting those copies back. Two problems follow:

1. Its server is threaded and takes no lock, so a cancelled transaction running beside a
   successful one restores a stale copy and silently erases the other's committed writes
   (seen here: a page item pointing at a segment record that had vanished). Real DynamoDB
   transactions are isolated. This wrapper runs one DynamoDB request at a time.
2. Every transaction copies whole tables, so commits slow down as tables grow (tens of
   milliseconds once a table holds a few thousand items), which would make benchmarks measure
   the emulator. With requests serialized, it is enough to save and restore only the items the
   transaction names, which is what this wrapper does instead.

S3, SQS and CloudFormation stay concurrent.

3. moto_server's HTTP server (werkzeug's development server) answers every request with
   `Connection: close` and starts a thread per connection, so each AWS request pays a TCP
   handshake and a thread start on both sides; real AWS endpoints keep connections alive. This
   wrapper serves the same moto application with HTTP/1.1 keep-alive instead (see
   `KeepAliveHandler`), and without a log line per request.
4. moto finds the backend for every request by listing its own package directory, stat-ing
   each entry and trying a few hundred URL patterns, all under one global lock: some
   milliseconds of serialized work per request. The answer depends only on the host name, so
   this wrapper remembers it.

5. moto ignores `ClientRequestToken` on TransactWriteItems. This wrapper honours it as DynamoDB
   documents it (a repeat within 10 minutes has no further effect and returns the first
   outcome; the token on a different request is refused), so that a retried commit behaves as
   deployed. `POST /_sledge/endpoint` with `{"clientRequestTokens": false}` turns it off at run
   time (tests prove that Sledge does not depend on it); `GET /_sledge/endpoint` names the
   wrapper and its switches, and says how much CPU time the endpoint has used (`cpuSeconds`, for
   `npm run bench`, which counts the endpoint's share of each job).

6. moto answers a Query on a table's own key by listing and sorting every item of the table,
   then keeping the partition asked for: a cost that grows with the whole table (hundreds of
   milliseconds per page once the integration tests have filled it), not with the answer. With
   requests serialized, this wrapper hands that Query the partition's items alone; moto's own
   code then sorts, pages, filters and projects them as before. Queries on an index are left
   as they are.

7. moto writes every DynamoDB answer through a generic serializer that walks botocore's model of
   the operation's output shape, attribute by attribute: about 1 ms of CPU per item read, so a
   BatchGetItem of 16 small page items cost the endpoint 17 ms, more than the four 1 MiB GETs
   of the same read (measured with `cpuByOperation`, below). The answer of an item read (GetItem,
   BatchGetItem, Query, Scan, TransactGetItems) is already DynamoDB's JSON wire form once moto
   has built it, so this wrapper writes it with `json.dumps` (binary values base64, as the
   protocol has them): the same JSON document, keys perhaps in another order. Any other
   operation, any error, and any answer holding something else goes through moto's serializer.

8. `GET /_sledge/endpoint` also reports, per operation, the requests served and the CPU seconds
   of their own threads (`cpuByOperation`), so that a benchmark can say where the endpoint's
   share of a job went.

Usage: python3 local/moto-server.py -H 127.0.0.1 -p 4566  (the same flags as moto_server)
"""
import argparse
import base64
import copy
import io
import json
import os
import signal
import sys
import threading
import time
import traceback
import types

import moto.dynamodb.models as dynamodb_models
from moto.dynamodb.models import DynamoDBBackend, Table
from moto.core.exceptions import JsonRESTError
from moto.dynamodb.responses import DynamoHandler, DynamoResult
import moto.backends
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import WSGIRequestHandler, make_server

_dynamodb_lock = threading.Lock()
_call_action = DynamoHandler.call_action


def _serialized_call_action(self):
    with _dynamodb_lock:
        return _call_action(self)


DynamoHandler.call_action = _serialized_call_action

_table_query = Table.query
_INDEX_NAME_ARG = 6  # Table.query(hash_key, range_comparison, range_objs, limit, exclusive_start_key, scan_index_forward, projection_expressions, index_name, ...)


def _query_one_partition(self, hash_key, *args, **kwargs):
    index_name = args[_INDEX_NAME_ARG] if len(args) > _INDEX_NAME_ARG else kwargs.get("index_name")
    if index_name or hash_key is None:
        return _table_query(self, hash_key, *args, **kwargs)
    # The items moto would keep from all_items() (those whose hash key is `hash_key`), read from
    # their partition; moto sorts them by range key next. `in` first: `items` is a defaultdict.
    partition = self.items[hash_key] if hash_key in self.items else None
    if partition is None:
        only = []
    elif self.range_key_attr:
        only = list(partition.values())
    else:
        only = [partition]
    # DynamoDB requests run one at a time (above), so no other request sees this override.
    self.all_items = lambda: only
    try:
        return _table_query(self, hash_key, *args, **kwargs)
    finally:
        del self.all_items


Table.query = _query_one_partition


def _deepcopy_except_tables(obj, memo=None):
    # Whole-table backups become no-ops; the items a transaction names are saved below.
    if isinstance(obj, Table):
        return obj
    return copy.deepcopy(obj, memo)


# Only moto's DynamoDB models module sees this `copy`; everything else keeps the real one.
dynamodb_models.copy = types.SimpleNamespace(deepcopy=_deepcopy_except_tables, copy=copy.copy)

_transact_write_items = DynamoDBBackend.transact_write_items


def _item_key(backend, op_type, op):
    table = backend.get_table(op["TableName"])
    if op_type == "Put":
        attrs = op["Item"]
        key = {table.hash_key_attr: attrs[table.hash_key_attr]}
        if table.range_key_attr is not None:
            key[table.range_key_attr] = attrs[table.range_key_attr]
        return key
    return op["Key"]


def _transact_write_items_saving_items(self, transact_items):
    saved = []
    for item in transact_items:
        for op_type, op in item.items():
            try:
                key = _item_key(self, op_type, op)
                current = self.get_item(op["TableName"], key)
            except Exception:  # the original call reports malformed requests itself
                continue
            saved.append((op["TableName"], key, copy.deepcopy(current.to_json()["Attributes"]) if current else None))
    try:
        return _transact_write_items(self, transact_items)
    except Exception:
        for table_name, key, attrs in reversed(saved):
            if attrs is None:
                if self.get_item(table_name, key) is not None:
                    self.delete_item(table_name, key)
            else:
                self.put_item(table_name, attrs)
        raise


DynamoDBBackend.transact_write_items = _transact_write_items_saving_items

# 5. ClientRequestToken on TransactWriteItems, as DynamoDB documents it: a repeat of a request
#    with the same token within 10 minutes has no further effect and returns the first outcome;
#    the same token on a different request is refused with IdempotentParameterMismatch. moto
#    ignores the token, so a retried commit whose first response was lost would be evaluated
#    again (and refused) where AWS answers it with success. Tests can turn this off at run time
#    (`POST /_sledge/endpoint` with `{"clientRequestTokens": false}`) to prove that Sledge does
#    not depend on it.
CLIENT_TOKEN_WINDOW_SECONDS = 600
CLIENT_TOKENS_MAX = 100_000
_client_tokens = {}  # token -> (expires_at, fingerprint, ("ok", response) | ("error", exception))
_settings = {"clientRequestTokens": os.environ.get("SLEDGE_ENDPOINT_CLIENT_TOKENS", "honour") != "ignore"}
_handler_transact_write_items = DynamoHandler.transact_write_items


class _IdempotentParameterMismatch(JsonRESTError):
    def __init__(self):
        super().__init__(
            "IdempotentParameterMismatchException",
            "Request parameters do not match the parameters of an earlier request with the same ClientRequestToken",
        )


def _transact_write_items_with_token(self):
    token = self.body.get("ClientRequestToken")
    if not token or not _settings["clientRequestTokens"]:
        return _handler_transact_write_items(self)
    # Runs under the DynamoDB lock (call_action is serialized above), so the table needs no other.
    now = time.monotonic()
    if len(_client_tokens) >= CLIENT_TOKENS_MAX:
        for t in [t for t, (expires, _, _) in _client_tokens.items() if expires <= now]:
            del _client_tokens[t]
    # Binary attribute values arrive decoded (bytes): fingerprint them as hex.
    fingerprint = json.dumps(
        {k: v for k, v in self.body.items() if k != "ClientRequestToken"},
        sort_keys=True,
        default=lambda o: o.hex() if isinstance(o, (bytes, bytearray)) else repr(o),
    )
    known = _client_tokens.get(token)
    if known and known[0] > now:
        if known[1] != fingerprint:
            raise _IdempotentParameterMismatch()
        kind, value = known[2]
        if kind == "error":
            raise value
        return value
    try:
        response = _handler_transact_write_items(self)
    except JsonRESTError as err:  # a cancelled or refused transaction: its outcome is remembered too
        _client_tokens[token] = (now + CLIENT_TOKEN_WINDOW_SECONDS, fingerprint, ("error", err))
        raise
    _client_tokens[token] = (now + CLIENT_TOKEN_WINDOW_SECONDS, fingerprint, ("ok", response))
    return response


DynamoHandler.transact_write_items = _transact_write_items_with_token


# CPU seconds and requests per operation ("S3:GetObject", "DynamoDB:BatchGetItem", ...), each
# request's own thread CPU from its first byte parsed to its last byte written: what a benchmark
# needs to say where the endpoint's share of a job went (`GET /_sledge/endpoint`,
# `cpuByOperation`). Time spent waiting for the DynamoDB lock or for the GIL is not CPU and is
# not counted.
_cpu_by_operation = {}
_cpu_lock = threading.Lock()


def _operation_of(environ):
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        service, _, op = target.partition(".")
        return ("DynamoDB:" if service.startswith("DynamoDB") else "SQS:" if service.startswith("AmazonSQS") else f"{service}:") + op
    query = environ.get("QUERY_STRING", "")
    for part in query.split("&"):
        if part.startswith("Action="):
            return "Query:" + part[len("Action="):]
    method = environ.get("REQUEST_METHOD", "")
    # S3, path-style (`/<bucket>/<key>`), as Sledge and s3backer address it.
    has_key = len([p for p in environ.get("PATH_INFO", "").split("/") if p]) >= 2
    if method == "GET":
        if not has_key:
            return "S3:ListObjects"
        return "S3:GetObject (range)" if environ.get("HTTP_RANGE") else "S3:GetObject"
    return {"PUT": "S3:PutObject", "DELETE": "S3:DeleteObject", "HEAD": "S3:HeadObject", "POST": "S3:Post"}.get(method, f"S3:{method}") if has_key else f"S3:{method} (bucket)"


def _count_cpu(operation, seconds):
    with _cpu_lock:
        entry = _cpu_by_operation.setdefault(operation, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds


# 7. Item reads answered with json.dumps instead of moto's model-driven serializer.
_ITEM_READS = frozenset({"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"})
_dynamo_execute_result = DynamoResult.execute_result


def _binary_as_base64(value):
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not part of an item")


def _execute_item_read(self, context):
    if isinstance(self.result, dict) and context.operation_model.name in _ITEM_READS:
        try:
            body = json.dumps(self.result, default=_binary_as_base64)
        except TypeError:
            return _dynamo_execute_result(self, context)
        return 200, {"Content-Type": "application/x-amz-json-1.0"}, body
    return _dynamo_execute_result(self, context)


DynamoResult.execute_result = _execute_item_read


def _with_sledge_routes(app):
    """`/_sledge/endpoint`: says this is Sledge's wrapper and which fidelity switches are on;
    a POST with a JSON object changes them (tests only). The answer also carries the process's
    CPU seconds so far (`cpuSeconds`)."""

    def wrapped(environ, start_response):
        if environ.get("PATH_INFO") != "/_sledge/endpoint":
            return app(environ, start_response)
        if environ.get("REQUEST_METHOD") == "POST":
            length = environ.get("CONTENT_LENGTH", "")
            raw = environ["wsgi.input"].read(int(length)) if length.isdigit() else b"{}"
            try:
                update = json.loads(raw or b"{}")
                if not isinstance(update, dict) or any(k not in _settings or not isinstance(v, bool) for k, v in update.items()):
                    raise ValueError("expected an object of known boolean settings")
            except ValueError as err:
                body = json.dumps({"error": "InvalidInput", "message": str(err)}).encode()
                start_response("400 Bad Request", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
                return [body]
            _settings.update(update)
        # cpuSeconds: this process's CPU time so far (every thread), for benchmarks that count
        # what the endpoint itself costs beside the processes they measure.
        with _cpu_lock:
            by_operation = {op: {"requests": n, "cpuSeconds": s} for op, (n, s) in _cpu_by_operation.items()}
        body = json.dumps({"endpoint": "sledge-moto", **_settings, "cpuSeconds": time.process_time(), "cpuByOperation": by_operation}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return wrapped


_moto_modules = frozenset(moto.backends.list_of_moto_modules())
moto.backends.list_of_moto_modules = lambda: _moto_modules

_get_backend_for_host = DomainDispatcherApplication.get_backend_for_host
_backend_for_host = {}


def _remembered_backend_for_host(self, host):
    # Called under the dispatcher's own lock, so the dictionary needs no other.
    if host not in _backend_for_host:
        _backend_for_host[host] = _get_backend_for_host(self, host)
    return _backend_for_host[host]


DomainDispatcherApplication.get_backend_for_host = _remembered_backend_for_host


class _BodyReader(io.RawIOBase):
    """The request body, limited to Content-Length, so that what the application leaves unread
    can be drained and the next request on the connection starts at its first byte. Being
    bounded already, it is marked `wsgi.input_terminated`, so werkzeug reads it directly
    (one read for the whole body) instead of through its own LimitedStream in small pieces."""

    def __init__(self, rfile, length):
        super().__init__()
        self._rfile = rfile
        self.remaining = length

    def read(self, size=-1):
        if self.remaining <= 0:
            return b""
        if size is None or size < 0 or size > self.remaining:
            size = self.remaining
        data = self._rfile.read(size)
        self.remaining -= len(data)
        if not data:
            self.remaining = 0
        return data

    def readline(self, size=-1):
        if self.remaining <= 0:
            return b""
        if size is None or size < 0 or size > self.remaining:
            size = self.remaining
        data = self._rfile.readline(size)
        self.remaining -= len(data)
        return data

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self):
        return self.read(-1)

    def drain(self):
        while self.remaining > 0 and self.read(min(self.remaining, 1 << 20)):
            pass


class KeepAliveHandler(WSGIRequestHandler):
    """Runs the WSGI application with HTTP/1.1 persistent connections.

    A connection is kept only when both messages are framed by Content-Length (or carry no
    body): the request body is read to its end before the next request is parsed, and a
    response without Content-Length gets one computed from its (in-memory) body. A chunked
    request, an error, or a client asking for `Connection: close` closes the connection.
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # header and body go in separate writes

    def log_request(self, code="-", size="-"):
        pass  # one line per request costs both processes CPU; errors are still logged

    def run_wsgi(self):
        started_cpu = time.thread_time()
        environ = None
        try:
            environ = self._run_wsgi()
        finally:
            if environ is not None and environ.get("PATH_INFO") != "/_sledge/endpoint":
                _count_cpu(_operation_of(environ), time.thread_time() - started_cpu)

    def _run_wsgi(self):
        if self.headers.get("Expect", "").lower().strip() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        environ = self.make_environ()
        body = None
        if environ.get("wsgi.input_terminated"):
            self.close_connection = True  # chunked request: not worth framing by hand
        else:
            length = environ.get("CONTENT_LENGTH", "")
            body = _BodyReader(self.rfile, int(length) if length.isdigit() else 0)
            environ["wsgi.input"] = body
            environ["wsgi.input_terminated"] = True
        started = {}

        def start_response(status, headers, exc_info=None):
            if exc_info and started.get("sent"):
                raise exc_info[1].with_traceback(exc_info[2])
            started["status"] = status
            started["headers"] = headers
            return lambda data: started.setdefault("early", []).append(data)

        try:
            app_iter = self.server.app(environ, start_response)
            try:
                chunks = started.pop("early", []) + [bytes(c) for c in app_iter]
            finally:
                if hasattr(app_iter, "close"):
                    app_iter.close()
        except Exception:
            self.close_connection = True
            self.log_error("error on %s %s:\n%s", self.command, self.path, traceback.format_exc())
            if not started.get("sent"):
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()
            return environ
        code_text, _, reason = started["status"].partition(" ")
        code = int(code_text)
        self.send_response(code, reason)
        names = set()
        for name, value in started["headers"]:
            names.add(name.lower())
            self.send_header(name, value)
        no_body = self.command == "HEAD" or code < 200 or code in (204, 304)
        if "content-length" not in names and not no_body:
            self.send_header("Content-Length", str(sum(len(c) for c in chunks)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        started["sent"] = True
        if not no_body:
            for c in chunks:
                if c:
                    self.wfile.write(c)
        if body is not None:
            body.drain()
        return environ


def main(argv):
    parser = argparse.ArgumentParser(description="moto_server, made safe and fast enough for Sledge")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("MOTO_PORT", 5000)))
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # moto builds some URLs (SQS queue URLs) from it
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True  # as moto_server sets it
    server = make_server(args.host, args.port, _with_sledge_routes(app), threaded=True, request_handler=KeepAliveHandler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"moto (Sledge wrapper) on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
