"""moto_server with DynamoDB transactions made isolated and cheap.

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

Usage: python3 local/moto-server.py -H 127.0.0.1 -p 4566  (the same flags as moto_server)
"""
import copy
import sys
import threading
import types

import moto.dynamodb.models as dynamodb_models
from moto.dynamodb.models import DynamoDBBackend, Table
from moto.dynamodb.responses import DynamoHandler
from moto.server import main

_dynamodb_lock = threading.Lock()
_call_action = DynamoHandler.call_action


def _serialized_call_action(self):
    with _dynamodb_lock:
        return _call_action(self)


DynamoHandler.call_action = _serialized_call_action


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

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
