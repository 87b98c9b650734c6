// Command k8s is a multi-call ("hyperkube"-style) binary for spawner's local single-node
// cluster. It serves kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
// kube-proxy and kubectl from one static binary built from k8s.io/kubernetes (see go.mod
// for the pinned version; every staging module is replaced by its published version).
//
// Usage:
//
//	k8s <component> [flags...]
//	<component> [flags...]   (when invoked through a symlink named after the component)
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	_ "time/tzdata"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"

	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

var components = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: k8s <%s> [flags...]\n", strings.Join(components, "|"))
	os.Exit(2)
}

func main() {
	name := filepath.Base(os.Args[0])
	if name == "k8s" || name == "hyperkube" {
		if len(os.Args) < 2 {
			usage()
		}
		name = os.Args[1]
		os.Args = append([]string{name}, os.Args[2:]...)
	}

	var c *cobra.Command
	switch name {
	case "kube-apiserver":
		c = apiserver.NewAPIServerCommand()
	case "kube-controller-manager":
		c = kcm.NewControllerManagerCommand()
	case "kube-scheduler":
		c = scheduler.NewSchedulerCommand()
	case "kubelet":
		c = kubelet.NewKubeletCommand(context.Background())
	case "kube-proxy":
		c = proxy.NewProxyCommand()
	case "kubectl":
		logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) //nolint:errcheck
		c = kubectlcmd.NewDefaultKubectlCommand()
		if err := cli.RunNoErrOutput(c); err != nil {
			kubectlutil.CheckErr(err)
		}
		os.Exit(0)
	case "-h", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "k8s: unknown component %q\n", name)
		usage()
	}
	os.Exit(cli.Run(c))
}
