// Command etcd is the upstream etcd server, built from its Go module at the version pinned in
// go.mod (the one kube-apiserver's client is built against), for multimesh's tests
// (scripts/kube-testenv.sh builds and caches it). It only calls the upstream entry point.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
