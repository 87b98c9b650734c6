module spawner.dev/sweeper

go 1.26.0
