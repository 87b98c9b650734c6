module spawner.dev/common

go 1.26.0
