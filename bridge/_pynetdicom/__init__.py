"""Every touch of pynetdicom's private internals, one module per mechanism.

Nothing else in the bridge reads or writes a private name of pynetdicom, or relies on how
a pynetdicom function works inside: ``bridge.scp`` calls the functions here. pynetdicom is
pinned ``>=3.0.4,<3.1`` for them, and ``tests/test_pynetdicom_contract.py`` fails, naming
the internal and the module here that relies on it, when any of them is not what this
code was written against (a digest of each function's source, the type of each
attribute). Read a changed function against the module before updating its digest.

:mod:`.reactor` (``--event-reactors``): each association's two threads wait on events
instead of polling every millisecond.
  Copies ``DULServiceProvider.run_reactor`` and ``Association._run_reactor`` (call for
  call, only the waiting differs) and sets, per association, the instance attributes
  ``dul.run`` (the DUL thread is a ``Thread`` with no ``run`` of its own, whose target is
  ``run_reactor``), ``dul.kill_dul`` and ``assoc._run_reactor`` (which
  ``Association.run_reactor`` looks up after negotiation), and replaces the queues
  ``dul.event_queue``, ``dul.to_provider_queue``, ``dul.to_user_queue`` and
  ``assoc.dimse.msg_queue`` with waking ones. The loops use ``dul._idle_timer``,
  ``dul._kill_thread``, ``dul._process_recv_primitive()``, ``dul._is_transport_event()``,
  ``dul.artim_timer``, ``dul.state_machine``, ``assoc._dul_ready``, ``assoc._kill``,
  ``assoc._is_paused``, ``assoc._reactor_checkpoint`` and ``assoc._serve_request()``; it
  swaps the loops in an ``EVT_CONN_OPEN`` handler, which ``RequestHandler.handle`` runs
  before ``assoc.start()``.
  If these change: the copied loops no longer do what pynetdicom's do (requests not
  served, releases or aborts not noticed, threads that never end), or fail at once.

:mod:`.commandset`: command sets encoded without pydicom's general-purpose writer.
  Replaces the name ``encode`` in ``pynetdicom.dimse_messages``, which
  ``DIMSEMessage.encode_msg`` and ``DIMSEMessage._set_command_group_length`` call for
  command sets only, keeping ``dsutils.encode``'s signature for the fallback.
  If these change: a data set encoded by the command-set encoder (wrong bytes or a
  fallback on every message), or the speed-up silently gone.

:mod:`.receive` (``--receive-to-disk``): C-STORE data sets received into a spool or a file.
  Sets ``_config.STORE_RECV_CHUNKED_DATASET`` and replaces the names
  ``NamedTemporaryFile``, ``create_file_meta`` and ``write_file_meta_info`` in
  ``pynetdicom.dimse_messages``, which ``DIMSEMessage.decode_msg`` alone calls, in the
  DUL thread (``threading.current_thread().assoc``), in that order, writing the preamble
  before and the data set after. Reads ``DIMSEMessage._data_set_file`` of the message
  still arriving (``assoc.dimse.message``), ``C_STORE._dataset_file`` of requests queued
  on ``assoc.dimse.msg_queue`` (``DIMSEServiceProvider.receive_primitive``) or handed to
  the handler (``DIMSEMessage.message_to_primitive``), and ``Event.dataset_path`` (which
  reads ``C_STORE._dataset_path``); relies on ``StorageServiceClass.SCP`` closing the file
  and deleting it, ignoring errors, after the handler.
  If these change: data sets lost or read from the wrong place, files left in the receive
  directory, or the whole data set in memory again.

:mod:`.send` (``bridge.scp.sending``, ``bridge.scp.streams``): C-STORE data sets sent
from Part 10 files as they are.
  Sets ``_config.STORE_SEND_CHUNKED_DATASET``, which ``Association.send_c_store`` reads
  for a path: the file's data set bytes are sent unchanged, on a context with the file's
  transfer syntax (ValueError when none was accepted). Shadows ``send_c_store`` of an
  association with an instance attribute, relying on
  ``QueryRetrieveServiceClass._get_scp`` and ``_move_scp`` passing the Dataset a C-GET or
  C-MOVE handler yields (non-empty, else not sent) to the ``send_c_store`` of the
  association they send on, looked up on the instance: the peer's for C-GET, and for
  C-MOVE the one ``self.ae.associate`` makes with the handler's keyword arguments, whose
  ``evt_handlers`` get ``EVT_CONN_OPEN`` from ``AssociationSocket.connect`` before
  ``associate`` returns.
  If these change: stored files decoded and re-encoded on the way out again, or a C-GET or
  C-MOVE whose file instances all fail (a stand-in Dataset without ``file_meta`` reaching
  pynetdicom's own ``send_c_store``).

:mod:`.sockets` (``bridge.scp.guard`` size limits, ``bridge.scp.netopt`` quick ACKs, the
reactor's ``select``): the association's socket.
  Reads ``AssociationSocket.socket`` and ``AssociationSocket._is_connected``, and shadows
  ``AssociationSocket.recv`` with an instance attribute, relying on
  ``DULServiceProvider._read_pdu_data`` reading every PDU through it as ``recv(6)`` then
  ``recv(length)`` and taking an OSError for a closed connection (A-ABORT).
  If these change: PDU and message size limits no longer enforced (a peer may make the
  bridge buffer what it declares), quick ACKs gone, or the reactor waiting on no socket.

:mod:`.calling` (``--allowed-calling-aes``): the calling-AE allow-list, per peer address.
  Sets ``AE._require_calling_aet`` (bypassing the property's copying setter) to a list
  whose iteration depends on the current thread, relying on ``AE.require_calling_aet``
  returning it as it is and on ``ACSE._negotiate_as_acceptor`` iterating it, in the
  association's own thread (``Association.run_reactor``), whose ``requestor`` is the peer.
  If these change: peers refused that should be accepted, or accepted from any address.

:mod:`.contexts`: supported contexts cheap to copy for every association.
  Relies on ``RequestHandler._create_association`` deep-copying the server's contexts per
  association, and on ``PresentationContext._transfer_syntax`` being the only mutable
  attribute of a context (the list behind ``transfer_syntax``).
  If these change: associations sharing a list of transfer syntaxes, or the 68 ms of CPU
  per association back.

:mod:`.loghandlers`: pynetdicom's "standard" log handlers bound only when they would log.
  Sets ``_config.LOG_HANDLER_LEVEL``, which ``Association._bind_defaults`` reads for
  every association made after.
  If these change: 0.24 ms of CPU per DIMSE message spent on dumps nobody reads.
"""
