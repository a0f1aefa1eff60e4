"""Word list of the RULER word tasks (common-words extraction): plain English nouns, verbs
and adjectives, written for this project. Lists that need more distinct words than these
continue with pronounceable made-up words (`ruler_tasks.word_pool`)."""

WORDS: tuple[str, ...] = tuple(sorted(set("""
acorn actor admiral album alley almond amber anchor angle ankle apple apricot apron arch
arena armor arrow artist atlas attic autumn avenue award axle bacon badge bagel bakery
balcony ballad bamboo banana banjo banner barley barn barrel basin basket battery beach
beacon bean beard bell belt bench berry bicycle biscuit blanket blossom board bonnet bottle
boulder bracelet branch bread breeze brick bridge brook broom bubble bucket buckle budget
bundle burrow butter button cabin cabbage cactus cake camel camera canal candle canoe canvas
canyon carpet carrot castle cattle cellar cement cereal chair chalk channel chapel cheese
cherry chimney chisel circle circus clay cliff clock cloud clover coast coffee collar comet
copper coral cotton cousin cradle crane crater crayon cricket crown crystal cupboard curtain
cushion daisy dancer desert diamond dinner doctor donkey dragon drawer dress drum eagle
elbow engine envelope fabric factory feather fence ferry fiddle field finger flag flame
flute forest fountain fox frame garden garlic gate gem giant ginger glacier glove goat
grain grape gravel guitar hammer harbor harp harvest hat hazel helmet hill honey hook
horizon horse island jacket jelly jewel journal jungle kettle kitten ladder lake lamp
lantern leaf lemon letter lily lizard locket lumber magnet mango maple marble market meadow
melon mirror mitten monkey moon mountain mushroom needle nest noodle oak ocean olive onion
orchard orange organ oven owl paddle palace pancake paper parcel parrot pasta peach peanut
pearl pencil pepper piano pickle pigeon pillow pilot pine planet plum pocket pond potato
pumpkin puppet puzzle quilt rabbit radio raft rainbow raisin ribbon river robin rocket
saddle salad salmon sandal saucer scarf school shadow shell shovel silver sketch sled
spoon squirrel stable stamp statue stone storm stove sugar summer sunset sweater table
teapot temple tent thimble thunder ticket tiger timber toast tomato tower tractor trail
tulip tunnel turtle umbrella valley vase violin wagon wallet whistle willow window winter
wizard wool yogurt zebra
bake borrow build carry climb collect cook dance draw drift float fold gather glide grow
hike hum juggle kneel knit laugh listen march mend paint plant polish pour race read
repair roam row sail sculpt sew shine sing skate sketch sleep slide smile sneeze stitch
swim swing travel wander wash weave whisper wink wonder write
bright calm chilly cozy crisp curly dusty fuzzy gentle glossy golden hollow humble lively
lofty mellow misty narrow polite quiet rosy rugged sandy silky sleepy slender sparkly
speedy steady sticky tender warm wooden woolly
""".split())))
