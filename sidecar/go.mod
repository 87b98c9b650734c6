module spawner.dev/sidecar

go 1.26.0

require spawner.dev/common v0.0.0

require github.com/gorilla/websocket v1.5.3

replace spawner.dev/common => ../common
