//! Flows of the call core, driven without sockets.
