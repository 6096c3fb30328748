"""Each service's process: its event loop, signal handling, the topics it ensures, what
it starts and stops around the library's building blocks. `meterstream receiver`,
`worker` and `sink` (meterstream/cli.py) call `main(settings)` here; `meterstream up`
(meterstream/supervisor.py) runs those commands as child processes."""
