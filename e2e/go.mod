module spawner.dev/e2e

go 1.26.0

require github.com/gorilla/websocket v1.5.3

replace (
	spawner.dev/apis => ../apis
	spawner.dev/common => ../common
	spawner.dev/generated => ../generated
)
