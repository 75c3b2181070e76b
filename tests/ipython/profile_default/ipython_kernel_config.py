# IPython profile used when the notebooks are executed for saving and for nbval (IPYTHONDIR=tests/ipython).
# TensorFlow 2.21 and SentencePiece write C++ log lines (absl, before absl::InitializeLog) straight to
# file descriptor 2, whatever TF_CPP_MIN_LOG_LEVEL says, and they differ from machine to machine.
# By default ipykernel copies fd-level output into cell outputs; here it goes to the terminal instead,
# as it would for a plain script, so saved outputs hold only what the notebook itself prints.
c = get_config()  # noqa: F821
c.IPKernelApp.capture_fd_output = False
# No command history: it would be written to this (committed) profile folder on every run.
c.HistoryManager.enabled = False
