// KafkaAdmin: the few admin operations scripts/kafka needs, on kafka-clients' Admin API.
//
// scripts/kafka compiles this file once into its jar cache and runs it with the cached jars on
// the class path (java -cp '<cache>/admin:<cache>/lib/*' KafkaAdmin ...). Each call is one JVM
// (about a second), so `ready` polls inside one process instead of being called in a loop.
//
//   ready        --bootstrap B --brokers N [--require-node I] [--watch-pids P1,P2] [--timeout S]
//   create-topic --bootstrap B NAME PARTITIONS [REPLICATION] [KEY=VALUE...] [--timeout S]
//   describe     --bootstrap B [TOPIC...] [--timeout S]
//   format       CLUSTER_ID SERVER_PROPERTIES...   (KRaft storage, as kafka-storage.sh format)
//
// Exit codes: 0 done, 1 failed (one line on stderr says why), 2 usage error.
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Properties;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterOptions;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.DescribeMetadataQuorumOptions;
import org.apache.kafka.clients.admin.DescribeTopicsOptions;
import org.apache.kafka.clients.admin.FeatureMetadata;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.QuorumInfo;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;

public final class KafkaAdmin {
    static final class Fail extends Exception {
        Fail(String msg) { super(msg); }
    }

    static final class Usage extends Exception {
        Usage(String msg) { super(msg); }
    }

    private static final String USAGE = String.join("\n",
        "usage: KafkaAdmin COMMAND --bootstrap HOST:PORT[,...] [--timeout SECONDS] ...",
        "  ready        --brokers N [--require-node I] [--watch-pids P1,P2,...]",
        "               wait until the cluster's metadata lists N brokers (and node I among them);",
        "               fails early if a watched pid exits",
        "  create-topic NAME PARTITIONS [REPLICATION] [KEY=VALUE...]",
        "               create the topic unless it exists (then its partition count must match);",
        "               waits until every partition has a leader",
        "  describe     [TOPIC...]   the cluster (brokers, active controller, features) and the topics",
        "  format       CLUSTER_ID SERVER_PROPERTIES...   (no --bootstrap) format each node's KRaft",
        "               storage in this one JVM, as kafka-storage.sh format -t CLUSTER_ID -c FILE");

    public static void main(String[] argv) {
        int rc;
        try {
            rc = run(argv);
        } catch (Usage e) {
            System.err.println("kafka-admin: " + e.getMessage());
            System.err.println(USAGE);
            rc = 2;
        } catch (Fail e) {
            System.err.println("kafka-admin: " + e.getMessage());
            rc = 1;
        } catch (Exception e) {
            System.err.println("kafka-admin: " + describe(e));
            rc = 1;
        }
        System.exit(rc);
    }

    static int run(String[] argv) throws Exception {
        if (argv.length == 0 || argv[0].equals("-h") || argv[0].equals("--help")) {
            System.out.println(USAGE);
            return argv.length == 0 ? 2 : 0;
        }
        String cmd = argv[0];
        String bootstrap = null;
        long timeoutMs = 30_000;
        int brokers = -1;
        int requireNode = -1;
        List<Long> watchPids = new ArrayList<>();
        List<String> pos = new ArrayList<>();
        for (int i = 1; i < argv.length; i++) {
            String a = argv[i];
            switch (a) {
                case "--bootstrap": bootstrap = value(argv, ++i, a); break;
                case "--timeout": timeoutMs = (long) (Double.parseDouble(value(argv, ++i, a)) * 1000); break;
                case "--brokers": brokers = Integer.parseInt(value(argv, ++i, a)); break;
                case "--require-node": requireNode = Integer.parseInt(value(argv, ++i, a)); break;
                case "--watch-pids":
                    for (String p : value(argv, ++i, a).split(",")) {
                        if (!p.isBlank()) watchPids.add(Long.parseLong(p.trim()));
                    }
                    break;
                default:
                    if (a.startsWith("--")) throw new Usage("unknown option " + a);
                    pos.add(a);
            }
        }
        if (cmd.equals("format")) return format(pos);
        if (bootstrap == null) throw new Usage("--bootstrap is required");
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        switch (cmd) {
            case "ready":
                if (brokers < 1) throw new Usage("ready needs --brokers N");
                if (!pos.isEmpty()) throw new Usage("ready takes no arguments");
                return ready(bootstrap, brokers, requireNode, watchPids, deadline, timeoutMs);
            case "create-topic":
                return createTopic(bootstrap, pos, deadline, timeoutMs);
            case "describe":
                return describeAll(bootstrap, pos, deadline);
            default:
                throw new Usage("unknown command " + cmd);
        }
    }

    static String value(String[] argv, int i, String opt) throws Usage {
        if (i >= argv.length) throw new Usage(opt + " needs a value");
        return argv[i];
    }

    static Admin admin(String bootstrap, int requestTimeoutMs) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.CLIENT_ID_CONFIG, "kafka-infer-scripts");
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, requestTimeoutMs);
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, requestTimeoutMs);
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, 100);
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, 500);
        p.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, 100);
        p.put(AdminClientConfig.RETRY_BACKOFF_MAX_MS_CONFIG, 500);
        return Admin.create(p);
    }

    static long remainingMs(long deadline) {
        return TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
    }

    static String describe(Throwable e) {
        Throwable t = e;
        while ((t instanceof ExecutionException || t.getCause() instanceof org.apache.kafka.common.KafkaException)
                && t.getCause() != null && t != t.getCause()) {
            t = t.getCause();
        }
        String m = t.getMessage();
        return t.getClass().getSimpleName() + (m == null ? "" : ": " + m);
    }

    // ---- ready ---------------------------------------------------------------------------------
    static int ready(String bootstrap, int want, int requireNode, List<Long> watchPids, long deadline, long timeoutMs)
            throws Exception {
        String last = "no answer yet";
        try (Admin admin = admin(bootstrap, 2_000)) {
            while (true) {
                for (long pid : watchPids) {
                    if (!ProcessHandle.of(pid).map(ProcessHandle::isAlive).orElse(false)) {
                        throw new Fail("process " + pid + " exited while waiting for the cluster");
                    }
                }
                try {
                    DescribeClusterResult r = admin.describeCluster(new DescribeClusterOptions().timeoutMs(2_000));
                    Collection<Node> nodes = r.nodes().get(3, TimeUnit.SECONDS);
                    Set<Integer> ids = nodes.stream().map(Node::id).collect(Collectors.toCollection(TreeSet::new));
                    if (ids.size() >= want && (requireNode < 0 || ids.contains(requireNode))) {
                        System.out.println("ready: " + ids.size() + " broker(s) " + ids + " at " + nodes.stream()
                            .sorted((a, b) -> Integer.compare(a.id(), b.id()))
                            .map(n -> n.host() + ":" + n.port()).collect(Collectors.joining(",")));
                        return 0;
                    }
                    last = "metadata lists " + ids.size() + " of " + want + " broker(s): " + ids
                        + (requireNode >= 0 && !ids.contains(requireNode) ? ", not yet node " + requireNode : "");
                } catch (Exception e) {
                    last = describe(e);
                }
                if (remainingMs(deadline) <= 0) {
                    throw new Fail("cluster at " + bootstrap + " not ready within " + timeoutMs / 1000.0 + " s (" + last + ")");
                }
                Thread.sleep(Math.min(200, Math.max(1, remainingMs(deadline))));
            }
        }
    }

    // ---- format --------------------------------------------------------------------------------
    // kafka.tools.StorageTool.execute(String[], PrintStream) is what kafka-storage.sh runs; called
    // by reflection so this file compiles against kafka-clients alone and a changed signature is
    // one clear error. One JVM formats all nodes of a cluster.
    static int format(List<String> pos) throws Exception {
        if (pos.size() < 2) throw new Usage("format needs CLUSTER_ID SERVER_PROPERTIES...");
        java.lang.reflect.Method execute;
        try {
            execute = Class.forName("kafka.tools.StorageTool")
                .getMethod("execute", String[].class, java.io.PrintStream.class);
        } catch (ReflectiveOperationException e) {
            throw new Fail("this Kafka has no kafka.tools.StorageTool.execute(String[], PrintStream): " + describe(e));
        }
        for (String config : pos.subList(1, pos.size())) {
            Object rc;
            try {
                rc = execute.invoke(null, new String[] {"format", "-t", pos.get(0), "-c", config}, System.out);
            } catch (java.lang.reflect.InvocationTargetException e) {
                throw new Fail("formatting " + config + ": " + describe(e.getCause()));
            }
            if (rc instanceof Integer && (Integer) rc != 0) throw new Fail("formatting " + config + " failed (" + rc + ")");
        }
        return 0;
    }

    // ---- create-topic --------------------------------------------------------------------------
    static int createTopic(String bootstrap, List<String> pos, long deadline, long timeoutMs) throws Exception {
        if (pos.size() < 2) throw new Usage("create-topic needs NAME PARTITIONS [REPLICATION] [KEY=VALUE...]");
        String name = pos.get(0);
        int partitions;
        try {
            partitions = Integer.parseInt(pos.get(1));
        } catch (NumberFormatException e) {
            throw new Usage("PARTITIONS must be a number, got '" + pos.get(1) + "'");
        }
        Optional<Short> replication = Optional.empty();
        Map<String, String> configs = new HashMap<>();
        for (String a : pos.subList(2, pos.size())) {
            int eq = a.indexOf('=');
            if (eq > 0) {
                configs.put(a.substring(0, eq), a.substring(eq + 1));
            } else if (replication.isEmpty() && configs.isEmpty() && a.matches("[0-9]+")) {
                replication = Optional.of(Short.parseShort(a));
            } else {
                throw new Usage("unexpected argument '" + a + "' (REPLICATION comes before KEY=VALUE configs)");
            }
        }
        try (Admin admin = admin(bootstrap, (int) Math.max(1_000, Math.min(timeoutMs, 30_000)))) {
            NewTopic nt = new NewTopic(name, Optional.of(partitions), replication).configs(configs);
            boolean created = true;
            try {
                admin.createTopics(List.of(nt)).all().get(Math.max(1, remainingMs(deadline)), TimeUnit.MILLISECONDS);
            } catch (ExecutionException e) {
                if (!(e.getCause() instanceof TopicExistsException)) throw new Fail("creating topic " + name + ": " + describe(e));
                created = false;
            }
            // Verify through the metadata: partition count, and every partition has a leader.
            String last = "";
            while (true) {
                try {
                    TopicDescription d = admin.describeTopics(List.of(name), new DescribeTopicsOptions().timeoutMs(2_000))
                        .allTopicNames().get(3, TimeUnit.SECONDS).get(name);
                    int got = d.partitions().size();
                    if (got != partitions) {
                        throw new Fail("topic " + name + " exists with " + got + " partition(s), expected " + partitions);
                    }
                    long leaderless = d.partitions().stream().filter(p -> p.leader() == null || p.leader().isEmpty()).count();
                    if (leaderless == 0) {
                        int rf = d.partitions().get(0).replicas().size();
                        if (!created && replication.isPresent() && rf != replication.get()) {
                            throw new Fail("topic " + name + " exists with replication factor " + rf + ", expected " + replication.get());
                        }
                        System.out.println((created ? "created " : "exists  ") + name + " partitions=" + got + " replication=" + rf);
                        return 0;
                    }
                    last = leaderless + " partition(s) without a leader";
                } catch (ExecutionException e) {
                    if (!(e.getCause() instanceof UnknownTopicOrPartitionException)) throw e;
                    last = "not in the metadata yet";
                } catch (java.util.concurrent.TimeoutException e) {
                    last = "describe timed out";
                }
                if (remainingMs(deadline) <= 0) throw new Fail("topic " + name + " not ready within the timeout (" + last + ")");
                Thread.sleep(100);
            }
        }
    }

    // ---- describe ------------------------------------------------------------------------------
    static int describeAll(String bootstrap, List<String> topics, long deadline) throws Exception {
        try (Admin admin = admin(bootstrap, (int) Math.max(1_000, Math.min(remainingMs(deadline), 30_000)))) {
            long t = Math.max(1, remainingMs(deadline));
            DescribeClusterResult c = admin.describeCluster();
            String clusterId = c.clusterId().get(t, TimeUnit.MILLISECONDS);
            List<Node> nodes = new ArrayList<>(c.nodes().get(t, TimeUnit.MILLISECONDS));
            nodes.sort((a, b) -> Integer.compare(a.id(), b.id()));
            System.out.println("cluster " + clusterId);
            System.out.println("brokers " + nodes.stream().map(n -> n.id() + "@" + n.host() + ":" + n.port())
                .collect(Collectors.joining(" ")));
            try {
                QuorumInfo q = admin.describeMetadataQuorum(new DescribeMetadataQuorumOptions())
                    .quorumInfo().get(Math.max(1, remainingMs(deadline)), TimeUnit.MILLISECONDS);
                System.out.println("controller " + q.leaderId() + " (epoch " + q.leaderEpoch() + ", voters "
                    + q.voters().stream().map(v -> String.valueOf(v.replicaId())).collect(Collectors.joining(",")) + ")");
            } catch (Exception e) {
                System.out.println("controller unknown (" + describe(e) + ")");
            }
            try {
                FeatureMetadata f = admin.describeFeatures().featureMetadata()
                    .get(Math.max(1, remainingMs(deadline)), TimeUnit.MILLISECONDS);
                System.out.println("features " + new TreeSet<>(f.finalizedFeatures().keySet()).stream()
                    .map(k -> k + "=" + f.finalizedFeatures().get(k).maxVersionLevel())
                    .collect(Collectors.joining(" ")));
            } catch (Exception e) {
                System.out.println("features unknown (" + describe(e) + ")");
            }
            if (topics.isEmpty()) {
                topics = new ArrayList<>(new TreeSet<>(admin.listTopics().names()
                    .get(Math.max(1, remainingMs(deadline)), TimeUnit.MILLISECONDS)));
            }
            if (topics.isEmpty()) return 0;
            Map<String, TopicDescription> ds = admin.describeTopics(topics).allTopicNames()
                .get(Math.max(1, remainingMs(deadline)), TimeUnit.MILLISECONDS);
            for (String name : topics) {
                TopicDescription d = ds.get(name);
                System.out.println("topic " + name + " partitions=" + d.partitions().size());
                for (TopicPartitionInfo p : d.partitions()) {
                    System.out.println("  " + name + "-" + p.partition()
                        + " leader=" + (p.leader() == null || p.leader().isEmpty() ? "none" : p.leader().id())
                        + " replicas=" + ids(p.replicas()) + " isr=" + ids(p.isr())
                        + (p.elr() == null || p.elr().isEmpty() ? "" : " elr=" + ids(p.elr())));
                }
            }
            return 0;
        }
    }

    static String ids(List<Node> nodes) {
        return nodes.stream().map(n -> String.valueOf(n.id())).collect(Collectors.joining(","));
    }
}
