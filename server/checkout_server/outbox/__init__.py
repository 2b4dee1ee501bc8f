"""The outbox as stored: the documents of an event (field names and mapping) and the shard
slots the relay selects them by. One home for the server and the relay."""
