//! QMP client: the QEMU Machine Protocol over a unix socket.
