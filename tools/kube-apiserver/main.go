// Command kube-apiserver is the upstream Kubernetes API server, built from the
// k8s.io/kubernetes Go module at the version pinned in go.mod, for multimesh's tests
// (scripts/kube-testenv.sh builds and caches it). It only calls the upstream command.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
