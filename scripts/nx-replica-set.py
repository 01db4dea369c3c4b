"""Runs the MongoDB stand-in nx-27017 as a one-member replica set ("rs0").

The stand-in implements sessions and transactions, but its `hello` answer
names no replica set, so drivers take it for a standalone server and never
start a transaction. This adds the replica-set fields to that answer (the
member is the address it listens on), then runs nx-27017 as usual, with the
same arguments: the store's production path, one transaction per batch,
then runs in tests. Used by scripts/servers.sh; see shared notes on the
stand-in.
"""

import sys

from nx_27017 import handler, nx_27017

HELLO = ("ismaster", "isMaster", "hello", "Hello")


def listening_address(argv):
    host, port = "127.0.0.1", "27017"
    for i, arg in enumerate(argv):
        if arg == "--host" and i + 1 < len(argv):
            host = argv[i + 1]
        elif arg in ("-p", "--port") and i + 1 < len(argv):
            port = argv[i + 1]
    return f"{host}:{port}"


def main():
    address = listening_address(sys.argv[1:])
    answer = handler.NeoSQLiteHandler.handle_command

    def handle_command(self, msg):
        request_id, reply = answer(self, msg)
        body = next((doc for kind, doc in msg["sections"] if kind == "body"), None) or {}
        if reply.get("ok") == 1 and any(key in body for key in HELLO):
            reply.update(
                setName="rs0",
                setVersion=1,
                hosts=[address],
                primary=address,
                me=address,
                secondary=False,
            )
        return request_id, reply

    handler.NeoSQLiteHandler.handle_command = handle_command
    nx_27017.main()


if __name__ == "__main__":
    main()
