module mlinfra.local/frontendprobe

go 1.26.0
