"""moto_server with DynamoDB requests serialized.

moto (5.x) implements TransactWriteItems by deep-copying every table the transaction touches
and, if any condition fails, putting those copies back. Its server is threaded and takes no
lock, so a cancelled transaction running beside a successful one restores a stale copy and
silently erases the other's committed writes (seen here: a page item pointing at a segment
record that had vanished). Real DynamoDB transactions are isolated; this wrapper restores that
by running one DynamoDB request at a time. S3, SQS and CloudFormation stay concurrent.

Usage: python3 local/moto-server.py -H 127.0.0.1 -p 4566  (the same flags as moto_server)
"""
import sys
import threading

from moto.dynamodb.responses import DynamoHandler
from moto.server import main

_dynamodb_lock = threading.Lock()
_call_action = DynamoHandler.call_action


def _serialized_call_action(self):
    with _dynamodb_lock:
        return _call_action(self)


DynamoHandler.call_action = _serialized_call_action

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
