"""An attempt's side of its team: the shared memory and the messages it reads, and the
writes and messages it stages until it succeeds. The store applies what an attempt
staged (``orchestration.store.memory``); nothing here touches the database."""
